"""Explanations and evaluations over whole data sets, serially or on Dask.

The data are cut into chunks of ``batch_size`` inputs; each chunk is one task: explain it (and,
for :func:`evaluate_dataset`, perturb it).  Networks keep nothing of a call, so one network serves
every task: Dask's threaded scheduler shares it between threads, and a ``dask.distributed.Client``
gets it once per worker (``client.scatter(..., broadcast=True)``), not with every chunk.

The data are a source (:mod:`lrpnumpy.sources`: a ``.npy`` file, a folder of ``.npy`` shards, an
IDX file, a zarr array, an image folder, or an array in memory).  A task carries the source and its
range, ``(source, start, stop)``, and reads its chunk where it runs: a file source travels as its
path (scattered once to each worker, like the model), an array in memory is scattered once too
(Dask's process scheduler, which has no scatter, gets each task's slice).  With ``out`` the task
writes its chunk itself and returns only its shape and dtype: the client schedules and tracks.
Without ``batch_size``, :func:`choose_batch_size` measures the cost per input and picks chunks long
enough that the scheduler's per-task overhead (:data:`TASK_OVERHEAD`) stays under 10 % of a task; a
resumed run takes the batch size its manifest records.

With ``out=FOLDER`` every finished chunk is written there (``chunk_<start>_<stop>.npy``, written to a
temporary name, synced and renamed, so a file that exists is complete), beside ``manifest.json``, the
record of how the run was made: the model's fingerprint (a SHA-256 of its layers' types,
configurations, wiring and parameters), the method, composite or rule and their options (the
metric's too), the target, the data's fingerprint (a SHA-256 of every input), length, sample shape
and dtype, the batch size, the network's dtype, lrpnumpy's version, the kernel backend, the list of
chunk files and, once the first chunk is done, the shape and dtype of a result.  A run that stops
(a crash, Ctrl-C, a lost machine) and is started again with the same arguments computes only the
chunks that are missing.  A run whose manifest differs from the folder's is refused
(:class:`~lrpnumpy.errors.ManifestError` naming the differing fields), unless ``overwrite=True``,
which removes the folder's chunk files and manifest and starts afresh (other files are left alone).
Every chunk a resumed run reuses is checked first: a file the manifest names, one plain array of
the recorded dtype and per-sample shape, one row per input of its range, finite; a chunk that
fails is recomputed (with a warning naming it and why), never mixed in.  A computed chunk that is
not finite is refused (:class:`~lrpnumpy.errors.NonFiniteError` naming it) and never written.
:func:`load` reads the chunks the manifest names, in its order, each checked the same way (a bad
or missing one is an error), and ignores every other file.  The result is identical, bit for bit,
to the serial run on the same kernel backend: each chunk is the same computation wherever it runs.

On a ``dask.distributed.Client``, a chunk whose worker dies on every try (Dask's ``KilledWorker``) or
a scheduler that goes away (``FutureCancelledError``, a closed connection) ends in
:class:`~lrpnumpy.errors.WorkerError` naming the chunk; the process scheduler's broken pool too.

Threads: every chunk runs with one BLAS thread, in every mode, the serial one included (set once
for the whole run with threadpoolctl, in this process; Dask's workers start with one): OpenBLAS's results depend, in the last bit, on how many threads share a product, and one
thread per chunk is what the workers use anyway while the chunks use the cores.
``dask.distributed`` starts its worker processes with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
and ``MKL_NUM_THREADS`` set to 1 (its ``distributed.nanny.pre-spawn-environ`` setting); lrpnumpy's
numba kernels are compiled serial.  Without threadpoolctl installed BLAS keeps its threads, and
results may differ from one mode to another by rounding (1e-16).  A batch's samples are shared
among kernel threads (:mod:`lrpnumpy.kernels._common`; the numbers do not depend on how many), by
default as many as the process's cores; on a ``dask.distributed.Client`` each worker's tasks use
its share of its machine's cores, the cores divided by the task threads of all the workers on that
machine (:func:`_worker_threads`; ``LRPNUMPY_THREADS`` in a worker's environment is kept), so that
two workers on two cores run two threads, not four.

On a worker, as fast as here: a network frozen here is frozen there (:func:`_refrozen`: pickling
drops NumPy's read-only flag, and without it the rules' derived weights and the convolutions'
banded matrices were computed again for every chunk), and where Dask pins glibc's trim threshold
the worker's malloc thresholds are set where glibc's own adjustment ends (:func:`_tune_malloc`:
otherwise every array above 128 KiB is fresh pages, faulted in on every chunk).
"""

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import numbers
import os
import re
import threading
import types
import warnings
from typing import NamedTuple

import numpy as np

from .errors import (DTypeError, LRPError, ManifestError, MissingDependencyError, NonFiniteError, RuleParameterError, SaveError,
                     ShapeError, WorkerError)
from .kernels._common import kernel_threads
from .progress import bar

#: The record of a run in its ``out`` folder.
MANIFEST = "manifest.json"
_FORMAT, _VERSION = "lrpnumpy-dataset-run", 1
_CHUNK = re.compile(r"chunk_(\d{9})_(\d{9})\.npy")


def _chunks(n, batch_size):
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise RuleParameterError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _targets(target, n):
    if target is None or np.ndim(target) == 0:
        return lambda start, stop: target
    t = np.asarray(target)
    if t.shape != (n,):
        raise ShapeError(f"target needs one class per input ({n}), got shape {t.shape}")
    return lambda start, stop: t[start:stop]


class Job:
    """What each task runs: explain a chunk (the keywords of :func:`lrpnumpy.explain`, or a method of
    the registry by name), and optionally score it with an evaluation metric.  Picklable."""

    def __init__(self, rule=None, composite=None, method=None, method_kwargs=None, metric=None, metric_kwargs=None):
        from . import methods as M
        if method is not None and (rule is not None or composite is not None):
            raise RuleParameterError("give method, or rule/composite (LRP), not both")
        if isinstance(method, str):
            M.get(method)  # an unknown name fails here, not on a worker
        elif method is not None and not callable(method):
            raise RuleParameterError(f"method must be a name of lrpnumpy.methods.REGISTRY or a function, got "
                                     f"{method!r}")
        for name, kw in (("method_kwargs", method_kwargs), ("metric_kwargs", metric_kwargs)):
            if kw is not None and not (isinstance(kw, dict) and all(isinstance(k, str) for k in kw)):
                raise RuleParameterError(f"{name} must be a dict of keyword arguments, got {kw!r}")
        if metric is not None and metric not in ("pixel_flipping", "region_perturbation", "selectivity"):
            raise RuleParameterError(f"metric must be pixel_flipping, region_perturbation or selectivity, got "
                                     f"{metric!r}")
        self.rule, self.composite, self.method = rule, composite, method
        self.method_kwargs, self.metric, self.metric_kwargs = dict(method_kwargs or {}), metric, dict(metric_kwargs
                                                                                                    or {})

    def explain(self, model, x, target):
        from . import methods as M
        from .explain import explain
        if self.method is None:
            return explain(model, x, target, rule=self.rule, composite=self.composite).relevance
        method = M.get(self.method) if isinstance(self.method, str) else self.method
        result = method(model, x, target, **self.method_kwargs)
        return getattr(result, "relevance", result)

    def __call__(self, model, x, target):
        relevance = self.explain(model, x, target)
        if self.metric is None:
            return relevance
        from . import evaluate
        r = getattr(evaluate, self.metric)(model, x, relevance, target, progress=False, **self.metric_kwargs)
        return r.curves


def _inputs_bar(chunks, todo, progress):
    """A bar over the inputs (throughput in inputs/s, time left), counting the chunks already done."""
    total = chunks[-1][1]
    left = sum(b - a for a, b in (chunks[i] for i in todo))
    return bar(total, progress, unit="input", initial=total - left)


def _rows(result):
    return int(result.shape[0]) if isinstance(result, (np.ndarray, _Written)) else 0


@contextlib.contextmanager
def _dask_bar(shown):
    """Dask's local schedulers: each finished chunk task moves the bar."""
    if shown is None:
        yield
        return
    from dask.callbacks import Callback
    with Callback(posttask=lambda key, result, dsk, state, worker: shown.update(_rows(result))):
        yield


def _limit_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _read_only(model):
    """For each parameter of each layer (in the network's order), whether it is read-only (frozen)."""
    return [[getattr(layer, p) is not None and not getattr(layer, p).flags.writeable for p in layer.params]
            for layer in model]


_REFREEZE_LOCK = threading.Lock()


def _refrozen(model, read_only):
    """The network as a worker holds it, its parameters that were frozen (read-only) in the client read-only
    again; once per network object (later calls find nothing to do).  Pickling drops NumPy's read-only
    flag, and a network whose weights can be written caches nothing (``Layer.derived``, the
    convolutions' banded matrices): every chunk on a worker would compute them again (a third of a
    lenet5 chunk).  Each such parameter is copied into an array of its own (an unpickled array views
    the message's buffer, which the kernels cannot tell is never written) and made read-only."""
    def stale(layer, p, frozen):
        value = getattr(layer, p)
        return frozen and value is not None and (value.flags.writeable or value.base is not None)
    pairs = [(layer, flags) for layer, flags in zip(model, read_only)]
    if not any(stale(layer, p, f) for layer, flags in pairs for p, f in zip(layer.params, flags)):
        return model
    with _REFREEZE_LOCK:
        for layer, flags in pairs:
            for p, frozen in zip(layer.params, flags):
                if stale(layer, p, frozen):
                    value = np.array(getattr(layer, p))
                    value.flags.writeable = False
                    setattr(layer, p, value)
    return model


#: Bytes from which glibc's malloc gives a Dask worker's arrays pages of their own, and free bytes it
#: keeps at the top of its heap (see _tune_malloc): where glibc's own adjustment ends.
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 64 << 20
_TUNED = {}


def tune_malloc(mmap_bytes=256 << 20, trim_bytes=512 << 20):
    """Let glibc's malloc keep freed memory for the next large array: arrays below ``mmap_bytes`` come
    from the heap, and up to ``trim_bytes`` of freed memory stays there (``mallopt``'s
    ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``).  For the whole process, from now on.

    glibc raises its own threshold as arrays are freed, but not above 32 MB: every larger array is
    fresh pages from the kernel, zeroed on first touch.  A ViT-B/16-sized explanation at batch 16 has
    many such arrays (the MLP's (16, 197, 3072) activations are 39 MB in float32); with the default
    settings it took 11.6-12.3 s, with this call 9.6-9.8 s (``benchmarks/vit_speed.py --tune-malloc``).  The
    price: the process keeps up to ``trim_bytes`` of memory it no longer uses.  Dask workers are tuned
    for their chunks on their first task (to 32 MB and 64 MB, where glibc's own adjustment ends).
    Returns whether the settings were applied (glibc only; elsewhere nothing changes)."""
    for name, value in (("mmap_bytes", mmap_bytes), ("trim_bytes", trim_bytes)):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 < value < 2 ** 31):
            raise RuleParameterError(f"tune_malloc: {name} must be an int in (0, 2**31), got {value!r}")
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return mallopt(-3, int(mmap_bytes)) == 1 and mallopt(-1, int(trim_bytes)) == 1  # M_MMAP_, M_TRIM_THRESHOLD


def _tune_malloc():
    """Once per process, in a process whose environment sets ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets
    it to 64 KiB for its workers) and not ``MALLOC_MMAP_THRESHOLD_``: glibc's malloc then keeps its mmap
    threshold at 128 KiB instead of raising it as arrays are freed, and returns every freed top of its
    heap, so each array above 128 KiB is fresh pages, which the kernel zeroes on first touch (about
    20,000 page faults, a third of a chunk's time, for 512 lenet5 inputs).  The thresholds are set to
    where glibc's own adjustment ends in a plain process (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`; :func:`tune_malloc`): a worker keeps up to 64 MB free for its next chunk, as
    this process does.  Returns whether they were set (glibc only)."""
    if "done" in _TUNED:
        return _TUNED["done"]
    done = False
    if "MALLOC_TRIM_THRESHOLD_" in os.environ and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done = tune_malloc(MMAP_THRESHOLD, TRIM_THRESHOLD)
    _TUNED["done"] = done
    return done


def _worker_facts():
    """On a Dask worker: the cores its process may use and its ``LRPNUMPY_THREADS`` (None if unset)."""
    from .kernels._common import _env_threads, cores
    return cores(), _env_threads()


def _slots(client):
    """One worker address per task thread of ``client``'s workers (a worker of 2 threads twice), in a
    fixed order; empty for a client that cannot tell.  Chunks are placed on them in turn: left to
    itself the scheduler put all 4 chunks of a run on one of 2 idle workers (it guesses a task's
    duration before it has seen one), so 2 workers took as long as one."""
    try:
        info = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # noqa: BLE001 (a client that cannot tell: the scheduler places the chunks)
        return []
    return [a for a in sorted(info) for _ in range(max(1, int(info[a].get("nthreads") or 1)))]


def _worker_threads(client):
    """Kernel threads for a task on each worker of ``client`` (address -> threads): its share of its
    machine's cores, the cores divided by the task threads of all the workers on that machine, so that
    workers side by side do not run more threads than there are cores; None for a worker whose
    environment sets ``LRPNUMPY_THREADS`` (that is kept), and for a worker that cannot tell."""
    try:
        facts = client.run(_worker_facts, on_error="ignore")
        info = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # noqa: BLE001 (a client that cannot tell: each worker's default)
        return {}
    per_host = {}
    for address, w in info.items():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads") or 1)
    shares = {}
    for address, fact in facts.items():
        if not (isinstance(fact, tuple) and address in info) or fact[1] is not None:
            continue
        shares[address] = max(1, fact[0] // max(1, per_host[info[address].get("host")]))
    return shares


def _task(job, model, x, target, path, limit=False, start=None, stop=None, threads=None, read_only=None):
    """One chunk: compute it (unless it is on disk already and complete: a retried task) and write it;
    ``limit``: one BLAS thread in this task (for a process of its own, where nothing else runs);
    ``start``: the index of its first input, which an lrpnumpy error of the chunk then names.
    ``x``: the chunk's inputs, or with ``stop`` a source (:mod:`lrpnumpy.sources`) that this task reads
    inputs ``start:stop`` of, where it runs.  ``threads``: on a Dask worker, the kernel threads per
    worker address (:func:`_worker_threads`); the worker's malloc is tuned first (:func:`_tune_malloc`).
    ``read_only``: in another process, which parameters of the network were frozen (:func:`_refrozen`).

    Returns the result, or with ``path`` only its shape and dtype (the chunk is on disk: nothing large
    travels back to the client or stays in its memory)."""
    rows = len(x) if stop is None else stop - start
    if path is not None and os.path.exists(path):
        done, _ = _read_chunk(path, rows)
        if done is not None:
            return _Written(done.shape, done.dtype.str)
    share = None
    if read_only is not None:
        model = _refrozen(model, read_only)
    if threads is not None:
        from distributed import get_worker
        _tune_malloc()
        share = threads.get(get_worker().address)
    try:
        # a worker's share of its machine; elsewhere the caller's kernel_threads (None would reset it)
        with (_limit_blas() if limit else contextlib.nullcontext()), \
                (kernel_threads(share) if share is not None else contextlib.nullcontext()):
            if stop is not None:
                x = x.read(start, stop)
            result = job(model, np.asarray(x), target)
    except LRPError as exc:
        if start is None or len(exc.args) != 1:
            raise
        try:
            named = type(exc)(f"inputs {start}:{start + rows}: {exc}")
        except TypeError:  # a subclass with another constructor
            raise exc from None
        raise named from None
    result = _check_result(result, rows, path)
    if path is None:
        return result
    _write_chunk(path, result)
    return _Written(result.shape, result.dtype.str)


class _Written(NamedTuple):
    """What a task that wrote its chunk returns: the result's shape and dtype."""

    shape: tuple
    dtype: str


def _check_result(result, rows, path):
    """A computed chunk: one array, a row per input, finite (never written otherwise)."""
    name = "a chunk" if path is None else f"chunk {os.path.basename(path)}"
    if not isinstance(result, np.ndarray) or result.ndim == 0 or len(result) != rows:
        raise ShapeError(f"{name}: the method returned {_what(result)}, expected an array with one row per input "
                         f"({rows})")
    if result.dtype.kind != "f":
        raise DTypeError(f"{name}: the method returned {result.dtype} values, expected floats")
    if not np.isfinite(result).all():
        raise NonFiniteError(f"{name}: the result holds NaN or infinity; it is not written")
    return result


def _what(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    return type(value).__name__


def _write_chunk(path, result):
    """Write atomically: a temporary file of this process and thread, synced, then renamed into place."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.partial.npy")
    try:
        with open(tmp, "wb") as f:
            np.save(f, result, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SaveError(f"{path}: the chunk cannot be written ({exc.strerror or exc})") from None


def _read_chunk(path, rows, spec=None):
    """``(array, None)`` for a complete chunk of ``rows`` rows (and ``spec``'s dtype and sample shape), else
    ``(None, why)``.  Memory-mapped first, so a header that only declares a large array allocates nothing."""
    if not os.path.isfile(path):  # a folder, a FIFO (reading it would wait forever), a device, a broken link
        return None, "not a regular file"
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        return None, f"not a readable .npy array ({type(exc).__name__}: {str(exc)[:160]})"
    if not isinstance(a, np.ndarray):
        return None, f"holds {type(a).__name__}, not one array"
    if a.dtype.kind != "f" or a.dtype.fields is not None:
        return None, f"dtype {a.dtype}, not floats"
    if a.ndim == 0 or a.shape[0] != rows:
        return None, f"shape {a.shape}, expected {rows} rows"
    if spec is not None and (a.dtype.str != spec["dtype"] or list(a.shape[1:]) != list(spec["sample_shape"])):
        return None, (f"shape {a.shape} ({a.dtype}), expected ({rows}, {', '.join(map(str, spec['sample_shape']))}) "
                      f"({np.dtype(spec['dtype'])}) as the manifest records")
    try:
        a = np.array(a)
    except MemoryError:
        return None, "too large to read"
    if not np.isfinite(a).all():
        return None, "holds NaN or infinity"
    return a, None


def _chunk_path(out, start, stop):
    return None if out is None else os.path.join(out, f"chunk_{start:09d}_{stop:09d}.npy")


# ----- the manifest -----

def _describe(value, depth=0):
    """A JSON-able description of a rule, composite, method, option or target: types by qualified name,
    objects by their public attributes, arrays by dtype, shape and SHA-256 (and their values when small)."""
    if depth > 12:
        return "..."
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if np.isfinite(v) else repr(v)
    if isinstance(value, (np.ndarray, np.generic)):
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            return {"array": str(a.dtype), "shape": list(a.shape)}
        d = {"array": a.dtype.str, "shape": list(a.shape),
             "sha256": hashlib.sha256(_bytes(a)).hexdigest()}
        if a.size <= 8:
            d["values"] = [_describe(v) for v in a.ravel().tolist()]
        return d
    if isinstance(value, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        code = getattr(value, "__code__", None)
        d = {"function": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"}
        if code is not None:  # two lambdas, or an edited function, differ here
            d["code"] = hashlib.sha256(code.co_code + repr(code.co_names).encode()).hexdigest()[:16]
        return d
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, functools.partial):
        return {"type": kind, "func": _describe(value.func, depth + 1), "args": _describe(value.args, depth + 1),
                "keywords": _describe(value.keywords, depth + 1)}
    if hasattr(value, "__dict__"):
        return {"type": kind, **{k: _describe(v, depth + 1) for k, v in sorted(vars(value).items())
                                 if not k.startswith("_")}}
    return {"type": kind}


def _bytes(a):
    """An array's bytes for a hash, without a copy when it is contiguous."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _model_fingerprint(model):
    """SHA-256 of a network: its kind, input shape, every node's name, type, configuration and inputs, and
    every parameter's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    nodes = [[name, type(layer).__name__, layer.config(), list(model.inputs_of(i))]
             for i, (name, layer) in enumerate(zip(model.names, model))]
    h.update(json.dumps({"type": type(model).__name__, "input_shape": _describe(model.input_shape),
                         "output": getattr(model, "output", None), "nodes": nodes},
                        sort_keys=True, default=str).encode())
    for layer in model:
        for p in layer.params:
            value = getattr(layer, p)
            if value is None:
                h.update(f"{p}:none;".encode())
                continue
            h.update(f"{p}:{value.dtype.str}:{value.shape};".encode())
            h.update(_bytes(value))
    return h.hexdigest()


def _manifest(kind, job, model, data, target, batch_size, chunks):
    from . import __version__, kernels
    first = data.read(0, 1)
    described = data.describe()
    return {
        "format": _FORMAT, "version": _VERSION, "kind": kind,
        "model": {"fingerprint": _model_fingerprint(model), "type": type(model).__name__, "layers": len(model)},
        "job": {"rule": _describe(job.rule), "composite": _describe(job.composite), "method": _describe(job.method),
                "method_kwargs": _describe(job.method_kwargs), "metric": job.metric,
                "metric_kwargs": _describe(job.metric_kwargs)},
        "target": _describe(target),
        "data": {"fingerprint": data.fingerprint(chunks), "length": len(data),
                 "sample_shape": list(first.shape[1:]), "dtype": first.dtype.str,
                 **({} if described is None else {"source": described})},
        "batch_size": int(batch_size), "dtype": None if model.dtype is None else np.dtype(model.dtype).str,
        "lrpnumpy": __version__, "kernels": kernels.BACKEND,
        "chunks": [os.path.basename(_chunk_path("", a, b)) for a, b in chunks],
        "result": None,
    }


def _short(value, width=60):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def _differences(old, new, prefix=""):
    """The fields (dotted paths, two levels at most) where two manifests differ, with both values."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        if not prefix and key == "result":
            continue
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and not prefix:
            found += _differences(a, b, f"{key}.")
        elif key == "chunks":
            found.append(f"chunks ({len(a) if isinstance(a, list) else a!r} files -> "
                         f"{len(b) if isinstance(b, list) else b!r})")
        else:
            found.append(f"{prefix}{key} (folder: {_short(a)}, this run: {_short(b)})")
    return found


def read_manifest(out):
    """The manifest of folder ``out`` (a dict), checked for its form.

    Raises
    ------
    ManifestError
        There is none, it is not lrpnumpy's, or it is damaged.
    """
    path = os.path.join(out, MANIFEST)
    try:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ManifestError(f"{path}: not a regular file")
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{out}: no {MANIFEST}; not a folder written by explain_dataset/evaluate_dataset "
                            f"(or by an older lrpnumpy)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None
    chunks = manifest.get("chunks") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or not isinstance(chunks, list)
            or not chunks):
        raise ManifestError(f"{path}: not an lrpnumpy run manifest (format {_FORMAT!r} with a list of chunks)")
    stop = 0
    for name in chunks:  # contiguous ranges from 0, named as this module names them (never a path elsewhere)
        m = _CHUNK.fullmatch(name) if isinstance(name, str) else None
        if m is None or int(m.group(1)) != stop or int(m.group(2)) <= stop:
            raise ManifestError(f"{path}: damaged chunk list at {_short(name)} (expected chunk_<start>_<stop>.npy "
                                f"ranges following each other from 0)")
        stop = int(m.group(2))
    result = manifest.get("result")
    if result is not None and not (isinstance(result, dict) and isinstance(result.get("dtype"), str)
                                   and isinstance(result.get("sample_shape"), list)):
        raise ManifestError(f"{path}: damaged 'result' record {_short(result)}")
    return manifest


def _write_manifest(out, manifest):
    from .io._common import atomic_write
    atomic_write(os.path.join(out, MANIFEST),
                 lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n"), ".json", text=True)


def _remove_run(out):
    """Remove a run's files from ``out``: its manifest, chunk files and temporary chunk files, nothing else."""
    names = [n for n in os.listdir(out) if _CHUNK.fullmatch(n) or n == MANIFEST
             or (n.startswith(".chunk_") and n.endswith(".partial.npy"))]
    for name in names:
        try:
            os.unlink(os.path.join(out, name))
        except OSError as exc:
            raise SaveError(f"{os.path.join(out, name)}: cannot be removed ({exc.strerror or exc})") from None


def _prepare(out, manifest, overwrite):
    """Check folder ``out`` against this run's manifest (refuse, or start afresh) and write the manifest;
    return the result record already known (None for a fresh run)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ManifestError(f"{out}: exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"{out}: the folder cannot be made ({exc.strerror or exc})") from None
    if overwrite:
        _remove_run(out)
        old = None
    elif os.path.exists(os.path.join(out, MANIFEST)):
        try:
            old = read_manifest(out)
        except ManifestError as exc:
            raise ManifestError(f"{exc}; pass overwrite=True (--overwrite) to start afresh") from None
        diffs = _differences(old, json.loads(json.dumps(manifest)))
        if diffs:
            raise ManifestError(f"{out}: holds the results of another run; its {MANIFEST} differs in "
                                f"{'; '.join(diffs)}. Pass overwrite=True (--overwrite) to replace them, or use "
                                f"another folder")
    else:
        old = None
        stray = sorted(n for n in os.listdir(out) if _CHUNK.fullmatch(n))
        if stray:
            raise ManifestError(f"{out}: holds chunk files ({stray[0]}, ...) but no {MANIFEST}, so nothing says how "
                                f"they were made; pass overwrite=True (--overwrite) to replace them, or use another "
                                f"folder")
    manifest["result"] = None if old is None else old.get("result")
    _write_manifest(out, manifest)
    return manifest["result"]


def _spec(result):
    """The record of a result's per-sample shape and dtype (from an array or a :class:`_Written`)."""
    return {"sample_shape": list(result.shape[1:]), "dtype": np.dtype(result.dtype).str}


def run(job, model, data, target=None, batch_size=None, scheduler=None, out=None, progress=None, overwrite=False,
        kind="explain_dataset"):
    """Run ``job`` over ``data`` chunk by chunk (see :func:`explain_dataset`)."""
    from .explain import logit_network
    from .sources import as_source
    data = as_source(data)
    n = len(data)
    if n == 0:
        raise ShapeError("the data set is empty")
    logit_network(model, data.read(0, 1))  # the model and the data's form, checked before any task
    _check_scheduler(scheduler)
    if batch_size is None:
        batch_size = _recorded_batch_size(out, overwrite) or choose_batch_size(job, model, data, target, scheduler)
    chunks = _chunks(n, batch_size)
    targets = _targets(target, n)
    paths = [_chunk_path(out, a, b) for a, b in chunks]
    todo = list(range(len(chunks)))
    state = {"spec": None, "manifest": None}
    if out is not None:
        out = os.fspath(out)
        manifest = _manifest(kind, job, model, data, target, batch_size, chunks)
        state["spec"], state["manifest"] = _prepare(out, manifest, overwrite), manifest
        todo = _reusable(job, model, data, chunks, targets, paths, state)

    def finished(i, result):  # in this process, for every chunk computed
        spec = _spec(result)
        if state["spec"] is None:
            state["spec"] = spec
            if state["manifest"] is not None:
                state["manifest"]["result"] = spec
                _write_manifest(out, state["manifest"])
        elif spec != state["spec"]:
            raise ShapeError(f"{_chunk_name(chunks, i)}: the result has shape {tuple(result.shape)} "
                             f"({np.dtype(result.dtype)}), the other chunks' rows are "
                             f"{tuple(state['spec']['sample_shape'])} ({np.dtype(state['spec']['dtype'])})")

    results = {}
    if scheduler is None:
        with _limit_blas():  # (process-wide: set once here, not in each task, which threads would race on)
            results.update(_serial(job, model, data, chunks, todo, targets, paths, progress, finished))
    else:
        results.update(_on_dask(job, model, data, chunks, todo, targets, paths, scheduler, progress, finished))
    if out is not None:
        return out
    return np.concatenate([results[i] for i in range(len(chunks))])


def _reusable(job, model, data, chunks, targets, paths, state):
    """The chunks still to compute: those not on disk, and those on disk that fail a check (removed, with a
    warning).  Without a recorded result shape (a run stopped before it recorded one), the first chunk
    to compute is computed here first, to learn it."""
    present = {i for i, p in enumerate(paths) if os.path.lexists(p)}
    if not present:
        return list(range(len(chunks)))
    if state["spec"] is None:
        i = next((i for i in range(len(chunks)) if i not in present), min(present))
        a, b = chunks[i]
        with _limit_blas():
            result = _check_result(job(model, data.read(a, b), targets(a, b)), b - a, paths[i])
        _write_chunk(paths[i], result)
        state["spec"] = state["manifest"]["result"] = _spec(result)
        _write_manifest(os.path.dirname(paths[i]), state["manifest"])
        present.add(i)
    todo = [i for i in range(len(chunks)) if i not in present]
    for i in sorted(present):
        a, b = chunks[i]
        _, why = _read_chunk(paths[i], b - a, state["spec"])
        if why is not None:
            warnings.warn(f"{paths[i]}: {why}; computing the chunk again", stacklevel=4)
            try:
                os.unlink(paths[i])
            except OSError as exc:
                raise SaveError(f"{paths[i]}: a bad chunk cannot be removed ({exc.strerror or exc})") from None
            todo.append(i)
    return sorted(todo)


def _serial(job, model, data, chunks, todo, targets, paths, progress, finished):
    results, shown = {}, _inputs_bar(chunks, todo, progress)
    for i in todo:
        a, b = chunks[i]
        results[i] = _task(job, model, data, targets(a, b), paths[i], start=a, stop=b)
        finished(i, results[i])
        if shown is not None:
            shown.update(b - a)
    if shown is not None:
        shown.close()
    return results


#: Seconds of overhead per task (scheduling, sending, a worker's bookkeeping; measured with
#: benchmarks/scale.py on a 2-core machine, rounded up): the automatic batch size makes a chunk's work
#: at least ten times this.
TASK_OVERHEAD = {None: 0.001, "synchronous": 0.001, "threads": 0.002, "processes": 0.05, "client": 0.02}
MAX_BATCH = 4096


def choose_batch_size(job, model, data, target=None, scheduler=None, share=0.1, overhead=None):
    """The batch size that keeps a task's overhead under ``share`` of its time: the per-input cost is
    measured on a few inputs (read and computed here, after a warm-up), the per-task overhead is
    ``overhead`` seconds (default: :data:`TASK_OVERHEAD` of the scheduler).  A power of two, at most
    :data:`MAX_BATCH` and, on Dask, small enough that every worker gets two chunks or more."""
    import time
    from .sources import as_source
    data = as_source(data)
    n = len(data)
    k = min(n, 16)
    t = _targets(target, n)(0, k)
    with _limit_blas():
        job(model, data.read(0, k), t)  # compiles kernels, fills caches
        begin = time.perf_counter()
        job(model, data.read(0, k), t)
        cost = max((time.perf_counter() - begin) / k, 1e-7)
    if overhead is None:
        overhead = TASK_OVERHEAD[scheduler if scheduler is None or isinstance(scheduler, str) else "client"]
    batch = 1 << max(0, math.ceil(math.log2(max(overhead / (share * cost), 1))))
    workers = 1
    if scheduler is not None:
        try:
            workers = len(scheduler.scheduler_info()["workers"]) if not isinstance(scheduler, str) else \
                (os.cpu_count() or 1)
        except Exception:  # noqa: BLE001 (a client that cannot tell: one worker)
            workers = 1
        batch = min(batch, max(1, -(-n // (2 * max(workers, 1)))))
    return int(max(1, min(batch, MAX_BATCH, n)))


def cluster_options(dashboard=False):
    """Keywords for ``distributed.LocalCluster`` about its web server.  A scheduler always serves HTTP (its
    health and metrics routes), on port 8787 unless told otherwise, where a second cluster (another
    user's, another run's) warns and moves; ``dashboard_address=None`` does not stop it.  Here the
    server takes a free port (":0") and the dashboard is off, unless ``dashboard`` is True (a free
    port; ``client.dashboard_link`` tells it) or an address such as ":8787"."""
    if not dashboard:
        return {"dashboard_address": ":0", "scheduler_kwargs": {"dashboard": False}}
    return {"dashboard_address": ":0" if dashboard is True else str(dashboard)}


def _recorded_batch_size(out, overwrite):
    """The batch size of the run already in ``out`` (a resumed run keeps it), or None."""
    if out is None or overwrite or not os.path.exists(os.path.join(os.fspath(out), MANIFEST)):
        return None
    try:
        size = read_manifest(os.fspath(out)).get("batch_size")
    except ManifestError:
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


def _chunk_name(chunks, i):
    a, b = chunks[i]
    return f"{os.path.basename(_chunk_path('', a, b))} (inputs {a}:{b})"


def _check_scheduler(scheduler):
    if scheduler is None:
        return
    try:
        import dask  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("a scheduler needs Dask: pip install 'lrpnumpy[dask]'") from exc
    if not isinstance(scheduler, str):
        if not hasattr(scheduler, "scatter") or not hasattr(scheduler, "submit"):
            raise RuleParameterError(f"scheduler must be 'threads', 'processes' or a dask.distributed.Client, got "
                                     f"{scheduler!r}")
    elif scheduler not in ("threads", "processes", "synchronous"):
        raise RuleParameterError(f"scheduler must be 'threads', 'processes' or a dask.distributed.Client, got "
                                 f"{scheduler!r}")


def _on_dask(job, model, data, chunks, todo, targets, paths, scheduler, progress, finished):
    import dask
    from .sources import ArraySource
    if not todo:
        return {}
    if not isinstance(scheduler, str):
        return _on_client(scheduler, job, model, data, chunks, todo, targets, paths, progress, finished)
    m, j = dask.delayed(model, pure=True), dask.delayed(job, pure=True)
    frozen = _read_only(model) if scheduler == "processes" else None
    if scheduler == "processes" and isinstance(data, ArraySource):
        # an array in memory would be pickled with every task: each task gets its own slice instead
        tasks = [dask.delayed(_task)(j, m, data.read(a, b), targets(a, b), paths[i], True, a, None, None, frozen)
                 for i, (a, b) in ((i, chunks[i]) for i in todo)]
    else:  # the source itself (threads share it; a file source pickles as its path): each task reads its chunk
        d = dask.delayed(data, name=f"lrpnumpy-data-{id(data):x}")
        tasks = [dask.delayed(_task)(j, m, d, targets(a, b), paths[i], scheduler == "processes", a, b, None, frozen)
                 for i, (a, b) in ((i, chunks[i]) for i in todo)]
    try:
        shown = _inputs_bar(chunks, todo, progress)
        with _limit_blas(), _dask_bar(shown):
            values = dask.compute(*tasks, scheduler=scheduler)
        if shown is not None:
            shown.close()
    except (concurrent.futures.BrokenExecutor, concurrent.futures.CancelledError) as exc:
        raise WorkerError(f"Dask's {scheduler} scheduler lost a worker while running chunks "
                          f"{_chunk_name(chunks, todo[0])} to {_chunk_name(chunks, todo[-1])}: "
                          f"{type(exc).__name__}: {exc}") from exc
    for i, value in zip(todo, values):
        finished(i, value)
    return dict(zip(todo, values))


#: Tasks kept in flight per task thread of a dask.distributed cluster: one running and one waiting, so
#: that no worker idles between two tasks; the others are submitted as tasks finish (see _in_turn).
IN_FLIGHT_PER_SLOT = 2


def _in_turn(client, submit, count, slots, futures):
    """Yield ``(k, future)`` for ``k`` in ``range(count)`` as the futures finish, ``submit(k, workers)``
    making the k-th, with at most :data:`IN_FLIGHT_PER_SLOT` per slot (:func:`_slots`) in flight; the
    first ones placed on the slots in turn (a hint), the later ones where the scheduler finds room.
    ``futures`` (future -> k) holds those in flight, for a caller that must cancel them.  250,000 tasks
    submitted at once (scale_plan.py's simulated run on a 2-core machine) lost the client's connection
    to its scheduler: it stopped answering while it took them in."""
    from distributed import as_completed
    window = max(1, len(slots)) * IN_FLIGHT_PER_SLOT
    pending = as_completed()
    for k in range(min(count, window)):
        future = submit(k, [slots[k % len(slots)]] if slots else None)
        futures[future] = k
        pending.add(future)
    k = min(count, window)
    for future in pending:
        yield futures.pop(future), future
        if k < count:
            nxt = submit(k, None)
            futures[nxt] = k
            pending.add(nxt)
            k += 1


def _on_client(client, job, model, data, chunks, todo, targets, paths, progress, finished):
    """Chunks as futures on a dask.distributed Client, a few per worker in flight at a time
    (:func:`_in_turn`); distributed's own errors become WorkerError naming the chunk (an lrpnumpy error
    raised by a task is passed on as it is)."""
    futures, results, i = {}, {}, None
    try:
        # the model, the job and the data (an array in memory, or a file source: a path) go once to every
        # worker, not with each chunk; a task carries (source, start, stop) and its worker reads the chunk
        m, j, d, t = client.scatter([model, job, data, _worker_threads(client)], broadcast=True, hash=False)
        frozen = _read_only(model)
        slots = _slots(client)  # a hint (allow_other_workers): a worker that dies or lags gives its chunks up

        def submit(k, workers):
            a, b = chunks[todo[k]]
            hint = {} if workers is None else dict(workers=workers, allow_other_workers=True)
            return client.submit(_task, j, m, d, targets(a, b), paths[todo[k]], False, a, b, t, frozen, pure=False,
                                 **hint)
        shown = _inputs_bar(chunks, todo, progress)
        for k, future in _in_turn(client, submit, len(todo), slots, futures):
            i = todo[k]
            results[i] = future.result()
            finished(i, results[i])
            if shown is not None:
                shown.update(_rows(results[i]))
        if shown is not None:
            shown.close()
        return results
    except LRPError:
        _cancel(client, futures)
        raise
    except Exception as exc:
        _cancel(client, futures)
        where = f"{_chunk_name(chunks, i)}" if i is not None else "sending the model to the workers"
        raise WorkerError(f"Dask failed on {where}: {type(exc).__name__}: {_first_sentence(exc)} (a worker that "
                          f"died on every try, or a scheduler that went away)") from exc


def _first_sentence(exc, width=200):
    text = str(exc).split(". ")[0].strip()
    return text if len(text) <= width else text[:width - 3] + "..."


def _cancel(client, futures):
    with contextlib.suppress(Exception):
        client.cancel(list(futures))


def explain_dataset(model, data, target=None, rule=None, composite=None, method=None, batch_size=None,
                    scheduler=None, out=None, progress=None, overwrite=False, **method_kwargs):
    """Explain every input of a data set, in chunks, serially or on Dask.

    Parameters
    ----------
    model : Sequential or Graph
    data : ndarray, numpy.memmap, a source of :mod:`lrpnumpy.sources`, a path, or any object with ``len()``
        and slicing that gives arrays
        The inputs (N, ...).  A source (a ``.npy`` file, a folder of ``.npy`` shards, an IDX file, a zarr
        array, an image folder; a path is read as :func:`lrpnumpy.sources.as_source` says) is read one
        chunk at a time by the task that computes it, where it runs: on a Dask cluster, by the worker,
        from storage every worker sees.  An array in memory goes to each worker once.
    target : None, int or sequence of int
        As for :func:`lrpnumpy.explain` (one class per input for a sequence).
    rule, composite : optional
        LRP's, as for :func:`lrpnumpy.explain`.
    method : str or callable, optional
        Instead of LRP: a name of :data:`lrpnumpy.methods.REGISTRY` (e.g. ``"gradient"``) or a
        function ``method(model, x, target, **method_kwargs)``.
    batch_size : int, optional
        Inputs per chunk (task).  Default: the one a resumed run's manifest records, else
        :func:`choose_batch_size`'s (a chunk long enough that the scheduler's per-task overhead stays
        under 10 % of its time; measured, so give it explicitly to make a run repeatable elsewhere).
    scheduler : None, "threads", "processes", "synchronous" or a dask.distributed.Client
        None runs serially in this process.
    out : str, optional
        A folder: each chunk's relevance is written there as it finishes, beside a manifest of how
        the run was made; chunks already there from the same run (same manifest) are checked and not
        computed again, and the folder's path is returned (:func:`load` reads it).  A folder holding
        another run's results is refused (:class:`~lrpnumpy.errors.ManifestError`).
    progress : bool, optional
        A progress bar over the chunks (default: on a terminal).
    overwrite : bool
        With ``out``: remove the folder's chunks and manifest, whatever run made them, and start afresh.

    Returns
    -------
    ndarray or str
        The relevance of every input (the data's shape), or ``out``.
    """
    job = Job(rule, composite, method, method_kwargs)
    return run(job, model, data, target, batch_size, scheduler, out, progress, overwrite, "explain_dataset")


def evaluate_dataset(model, data, metric="pixel_flipping", target=None, rule=None, composite=None, method=None,
                     batch_size=None, scheduler=None, out=None, progress=None, overwrite=False, **metric_kwargs):
    """Explain and score every input of a data set with a perturbation metric, in chunks.

    Each chunk is explained (as by :func:`explain_dataset`) and perturbed (``metric``:
    ``"pixel_flipping"``, ``"region_perturbation"`` or ``"selectivity"`` of :mod:`lrpnumpy.evaluate`
    with ``metric_kwargs``); the per-sample curves are kept (or written to ``out``, with a manifest,
    as for :func:`explain_dataset`; ``overwrite`` as there).

    Returns
    -------
    dict
        ``curves`` (N, L + 1), ``mean_curve`` and ``aopc`` (per sample, and ``mean_aopc``).
    """
    job = Job(rule, composite, method, None, metric, metric_kwargs)
    curves = run(job, model, data, target, batch_size, scheduler, out, progress, overwrite, "evaluate_dataset")
    if out is not None:
        curves = load(out)
    aopc = (curves[:, :1] - curves).mean(axis=1)
    return {"curves": curves, "mean_curve": curves.mean(axis=0), "aopc": aopc, "mean_aopc": float(aopc.mean())}


def load(out):
    """The chunks of folder ``out`` (written by :func:`explain_dataset` or :func:`evaluate_dataset`) that
    its manifest names, in order, as one array; every other file in the folder is ignored.

    Raises
    ------
    ManifestError
        No manifest, a damaged one, a chunk missing (an unfinished run: run it again to finish) or a
        chunk that is not what the manifest records (unreadable, another dtype or shape, NaN).
    """
    out = os.fspath(out)
    manifest = read_manifest(out)
    spec, parts, missing = manifest.get("result"), [], []
    for name in manifest["chunks"]:
        m = _CHUNK.fullmatch(name)
        path = os.path.join(out, name)
        if not os.path.lexists(path):
            missing.append(name)
            continue
        a, why = _read_chunk(path, int(m.group(2)) - int(m.group(1)), spec)
        if why is not None:
            raise ManifestError(f"{path}: {why}; run the same command again to compute it afresh")
        spec = spec or _spec(a)
        parts.append(a)
    if missing:
        raise ManifestError(f"{out}: the run is unfinished: {len(missing)} of {len(manifest['chunks'])} chunks are "
                            f"missing ({missing[0]}{', ...' if len(missing) > 1 else ''}); run it again with the "
                            f"same arguments to compute them")
    return np.concatenate(parts)
